-- Recordings made to contract the insurance (legal obligation). Their analyses outlive
-- them on their own clock (the foreign key is cleared on delete), so nothing waits.
SELECT r.id,
       r.started_at AS clock,
       (EXISTS (SELECT 1 FROM retention.active_holds AS h WHERE h.table_name = 'call_recordings' AND h.record_id = r.id)
        OR EXISTS (SELECT 1 FROM retention.active_holds AS h WHERE h.table_name = 'customers' AND h.record_id = r.customer_id)) AS held,
       NULL::text AS waiting_for
FROM app.call_recordings AS r
WHERE r.reason = 'contracting'
  AND r.started_at < %(cutoff)s
