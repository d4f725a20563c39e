-- Capture with the owner's rights (issue 16). The capture triggers ran with the rights of whoever inserted
-- into Canvas's tables, so Canvas's application role needed rights on the outbox: INSERT, which also let
-- anyone holding Canvas's credentials forge outbox rows that the relay signs and sends, and SELECT (for the
-- INSERT ... RETURNING), which the README of 0001 forgot, so Canvas's own writes failed.
--
-- Now the two trigger functions are SECURITY DEFINER: they run as their owner, the role that ran migrate
-- (relay_owner in sql/privileges.sql), which owns the outbox and may read api_patient and api_appointment.
-- Canvas's role needs nothing of the relay's schema. A SECURITY DEFINER function must pin its search_path
-- (pg_catalog, pg_temp: the caller's schemas are never searched, pg_temp last), which 0002 had removed for
-- speed.
--
-- Cost per captured row, measured on the backend as Canvas's role (PostgreSQL 15, 2 shared cores, medians of
-- 11-12 alternating runs; bench/results/notes.md has the method of 0002's figure):
-- - the call wrapper alone, on a trigger whose body is PERFORM txid_current(): one insert per transaction
--   (10,000 per run, COMMIT each) 16.3 us invoker, 17.2 definer, 19.3 definer + SET search_path: +2.1 us
--   per row (per-run differences 0-9 us: the machine was shared); 20,000 inserts in one transaction: +2.5 us;
-- - the real triggers, 5,000 inserts per run into api_appointment / api_notestatechangeevent (backend CPU
--   time): 42.8 -> 44.1 us and 53.8 -> 57.5 us per row, within this machine's run-to-run noise (+-10 us).
-- So about 2 us per captured row, some 4 % of a captured appointment insert.
--
-- The functions keep their bodies (0001): PERFORM pg_catalog.txid_current() stays their first statement.
ALTER FUNCTION appointment_relay.capture_appointment() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION appointment_relay.capture_note_state() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- A trigger fires whatever EXECUTE says (PostgreSQL checks it only at CREATE TRIGGER); nobody else needs to
-- call these, and a definer function callable by anyone is a habit not to keep.
REVOKE EXECUTE ON FUNCTION appointment_relay.capture_appointment() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION appointment_relay.capture_note_state() FROM PUBLIC;

-- Only the capture triggers write the outbox. The README of 0001 granted INSERT on it to Canvas's role
-- (whose name a migration cannot know) and the daemon's grants covered it too (the daemon only reads and
-- deletes outbox rows): take INSERT and UPDATE from every role but the owner, PUBLIC included. What else
-- 0001's README granted Canvas's role (USAGE on the schema, and SELECT if someone added it to get bookings
-- working) cannot be told apart from the daemon's rights here: the README says what to revoke by name.
DO $$
DECLARE
  grantee_name text;
BEGIN
  FOR grantee_name IN
    SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
    FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
    WHERE c.oid = 'appointment_relay.outbox'::regclass
      AND a.grantee <> c.relowner
      AND a.privilege_type IN ('INSERT', 'UPDATE')
  LOOP
    EXECUTE pg_catalog.format('REVOKE INSERT, UPDATE ON appointment_relay.outbox FROM %s', grantee_name);
  END LOOP;
END
$$;
