"""Episode training of HHN heads on cached frozen-backbone features (``wfss train``)."""
