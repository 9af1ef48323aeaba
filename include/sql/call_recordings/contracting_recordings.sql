-- Recordings made to contract the insurance (legal obligation). Their analyses outlive
-- them on their own clock (the foreign key is cleared on delete), so nothing waits.
WHERE call_recordings.reason = 'contracting'
