"""The fleet dashboard: a web service to see the fleet, change config and roll out releases."""
