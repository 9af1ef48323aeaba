-- Candidates not recruited, due `live` after the last contact with them.
WHERE NOT job_applications.hired
