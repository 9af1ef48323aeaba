-- Promotional calls made: they go with their contact record, 3 years after the last phone
-- contact with that person.
JOIN app.marketing_contacts AS marketing_contacts ON marketing_contacts.id = marketing_messages.marketing_contact_id
WHERE marketing_contacts.channel = 'phone'
