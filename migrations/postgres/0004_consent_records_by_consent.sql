-- A consent's newest entry, looked up inside every append of a withdrawal or an update (the
-- check-and-append that keeps a withdrawn consent withdrawn).
CREATE INDEX consent_records_by_consent ON consent_records (consent_id, idx);
