-- Erasure and retention: deleted packages whose object is not yet confirmed gone (the cleanup path).
CREATE INDEX packages_deleted_objects ON packages (updated_at) WHERE status = 'deleted' AND object_key IS NOT NULL;
-- Retention: the stored packages of a category, oldest first.
CREATE INDEX packages_retention ON packages (data_category, created_at) WHERE status = 'stored';
