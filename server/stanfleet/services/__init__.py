"""Backend services: all STAN clients through stanfleet.client."""
