"""Normalization: HL7v2 and FHIR (R4/R4B/R5) inputs to FHIR R4 resources and clinical events."""
