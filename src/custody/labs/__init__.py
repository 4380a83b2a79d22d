"""Lab results: the canonical model, parsers for HL7 v2, FHIR R4 and CSV, and critical values."""
