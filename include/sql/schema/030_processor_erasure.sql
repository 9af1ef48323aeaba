-- Erasure at the payment processor (plugins/retention/processor.py) and the application's
-- writes of payment references, serialised. Immediately before each call to the processor
-- (detach a card, delete a customer) the engine takes advisory locks, reads the rows again
-- and keeps the locks until the processor answered: the processor customer's, and for a
-- customer's deletion our customers' whose contracts it served. The triggers below make each
-- application write that could put a processor customer or a card back in use take the same
-- lock and keep it to its commit: a payment method written (its processor customer), a
-- contract inserted running or set back to running (its customer). Such a write either
-- committed before the engine's re-check, which sees it and keeps what it uses, or waits until
-- the call was answered (seconds). The application needs no change.
--
-- The application takes its locks in shared mode: its writes never wait for one another, only
-- for a call in flight (the engine takes them exclusively, and only by trying: it never waits
-- inside PostgreSQL, so no deadlock). Two int4 keys, a key space of their own (never a
-- purpose's lock): a class, then a bucket of the reference, so that a bulk load in one
-- transaction takes at most 1,024 locks per class (the lock table is finite); two customers of
-- one bucket only wait for the same calls.

CREATE OR REPLACE FUNCTION retention.processor_customer_lock_key(customer_ref text) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT hashtext(customer_ref) & 1023 $$;

CREATE OR REPLACE FUNCTION retention.contract_customer_lock_key(customer_id bigint) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT (customer_id & 1023)::integer $$;

CREATE OR REPLACE FUNCTION retention.wait_for_processor_erasure() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    IF TG_TABLE_NAME = 'payment_methods' THEN
        PERFORM pg_advisory_xact_lock_shared(hashtext('retention:processor_customer'),
                                             retention.processor_customer_lock_key(NEW.processor_customer_ref));
    ELSE
        PERFORM pg_advisory_xact_lock_shared(hashtext('retention:contract_customer'),
                                             retention.contract_customer_lock_key(NEW.customer_id));
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER payment_methods_wait_for_processor_erasure
    BEFORE INSERT OR UPDATE OF processor_customer_ref, processor_method_ref, contract_id ON app.payment_methods
    FOR EACH ROW EXECUTE FUNCTION retention.wait_for_processor_erasure();

-- A contract inserted running, or set back to running (end cleared or moved later).
CREATE OR REPLACE TRIGGER contracts_wait_for_processor_erasure
    BEFORE INSERT OR UPDATE OF ended_at, customer_id ON app.contracts
    FOR EACH ROW WHEN (NEW.ended_at IS NULL OR NEW.ended_at > now())
    EXECUTE FUNCTION retention.wait_for_processor_erasure();

-- The engine's re-check reads a processor customer's rows before each call.
CREATE INDEX IF NOT EXISTS payment_methods_processor_customer_ref_idx
    ON app.payment_methods (processor_customer_ref);
