-- Phone marketing contact records, 3 years after the last contact on that channel. A record
-- waits while its history is still there.
WHERE marketing_contacts.channel = 'phone'
