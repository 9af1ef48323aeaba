-- Erasure at the payment processor (plugins/retention/processor.py) and the application's
-- writes of payment references, serialised. Immediately before each call to the processor
-- (detach a card, delete a customer) the engine takes the processor customer's advisory lock,
-- reads the customer's rows again and keeps the lock until the processor answered. The
-- triggers below make each application write that could put that customer or a card back in
-- use take the same lock and keep it to its commit: the write either committed before the
-- engine's re-check, which then sees it and keeps what it uses, or waits until the call was
-- answered. The application needs no change; a write waits at most one call (seconds).

-- The lock's second key (the first is hashtext('retention:processor_customer'); two int4 keys
-- are a key space of their own, never a purpose's lock). A bucket of the customer reference
-- rather than the reference itself: a bulk load of payment methods in one transaction takes at
-- most 1,024 locks (the lock table is finite); two customers of a bucket only wait for each other.
CREATE OR REPLACE FUNCTION retention.processor_customer_lock_key(customer_ref text) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT hashtext(customer_ref) & 1023 $$;

CREATE OR REPLACE FUNCTION retention.wait_for_processor_erasure() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    IF TG_TABLE_NAME = 'payment_methods' THEN
        PERFORM pg_advisory_xact_lock(hashtext('retention:processor_customer'),
                                      retention.processor_customer_lock_key(NEW.processor_customer_ref));
    ELSE
        -- A running contract: every processor customer its customer has payment references
        -- with, in key order.
        PERFORM pg_advisory_xact_lock(hashtext('retention:processor_customer'), lock_key)
        FROM (SELECT DISTINCT retention.processor_customer_lock_key(pm.processor_customer_ref) AS lock_key
              FROM app.payment_methods AS pm
              JOIN app.contracts AS c ON c.id = pm.contract_id
              WHERE c.customer_id = NEW.customer_id
              ORDER BY 1) AS keys;
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER payment_methods_wait_for_processor_erasure
    BEFORE INSERT OR UPDATE OF processor_customer_ref, processor_method_ref, contract_id ON app.payment_methods
    FOR EACH ROW EXECUTE FUNCTION retention.wait_for_processor_erasure();

-- A contract inserted running, or set back to running (ended_at cleared or moved later).
CREATE OR REPLACE TRIGGER contracts_wait_for_processor_erasure
    BEFORE INSERT OR UPDATE OF ended_at, customer_id ON app.contracts
    FOR EACH ROW WHEN (NEW.ended_at IS NULL OR NEW.ended_at > now())
    EXECUTE FUNCTION retention.wait_for_processor_erasure();

-- The engine's re-check reads a processor customer's rows before each call.
CREATE INDEX IF NOT EXISTS payment_methods_processor_customer_ref_idx
    ON app.payment_methods (processor_customer_ref);
