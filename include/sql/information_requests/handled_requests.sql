-- Information requests, deleted by the first run after they were handled. An open request
-- (handled_at NULL) stays, whatever its age.
WHERE information_requests.status = 'handled'
