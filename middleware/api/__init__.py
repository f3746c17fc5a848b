"""HTTP faces: operator API, HL7v2 over HTTP, FHIR notification endpoints."""
