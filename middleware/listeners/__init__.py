"""Listeners: MLLP and HTTP ingest of HL7v2, FHIR notification endpoints, reconciliation."""
