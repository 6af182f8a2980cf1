-- Erasure and retention: deleted packages whose object is not yet confirmed gone (the cleanup path).
CREATE INDEX packages_deleted_objects ON packages (updated_at) WHERE status = 'deleted' AND object_key IS NOT NULL;
-- Retention: the stored and quarantined packages of a category, oldest first.
CREATE INDEX packages_retention ON packages (data_category, created_at) WHERE status IN ('stored', 'quarantined');
-- Erasure: a package's resumable upload and its events.
CREATE INDEX tus_uploads_by_package ON tus_uploads (package_id) WHERE package_id IS NOT NULL;
CREATE INDEX outbox_by_aggregate ON outbox (aggregate_id);
CREATE INDEX tus_uploads_by_user ON tus_uploads (user_id) WHERE package_id IS NULL;
-- Pruning sent events.
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;
