-- Identity documents, deleted (with their file) by the first run after the verification was
-- done, whatever its outcome. A pending one (checked_at NULL) stays.
WHERE identity_documents.status IN ('verified', 'rejected')
