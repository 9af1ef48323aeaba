-- Recordings for quality control or claims handling.
WHERE call_recordings.reason IN ('quality', 'claims')
