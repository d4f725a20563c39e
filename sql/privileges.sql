-- The relay's database roles and grants, least privilege: the README's "Database privileges" section shows
-- this file, and tests/faults/least_privilege_test.cpp runs it as it is.
--
-- Who runs it: a superuser or the DBA who owns Canvas's tables, connected to Canvas's database, once, before
-- the first `appointment-relay migrate`:
--     psql -v ON_ERROR_STOP=1 -d canvas -f sql/privileges.sql
-- Then `appointment-relay migrate` as relay_owner, and `appointment-relay run` (and status, replay) as relay.
--
-- The names: relay_owner (owns the relay's schema, runs migrate), relay (the daemon), canvas (Canvas's
-- database). Change them in the statements below if yours differ. The test does just that: in every line
-- that is not a comment it replaces the whole words relay_owner, relay and canvas (case-sensitive; the
-- "relay" inside "appointment_relay" is not a whole word) with names unique to its run.
--
-- Canvas's application role gets nothing here: the capture triggers run as relay_owner (SECURITY DEFINER,
-- migration 0003), so Canvas's writes need no right on the relay's schema, and Canvas's credentials cannot
-- write the outbox the relay signs and sends.

-- The owner: creates the schema's objects and the two capture triggers, and the triggers run with its rights.
CREATE ROLE relay_owner LOGIN;
-- migrate always issues CREATE SCHEMA IF NOT EXISTS, which PostgreSQL checks against this right.
GRANT CREATE ON DATABASE canvas TO relay_owner;
GRANT USAGE ON SCHEMA public TO relay_owner;
-- To create the triggers (TRIGGER) and, in them, to read the appointment and the patient's key (SELECT).
GRANT TRIGGER ON public.api_appointment, public.api_notestatechangeevent TO relay_owner;
GRANT SELECT ON public.api_patient, public.api_appointment TO relay_owner;
-- Created here, owned by relay_owner, so that the daemon's rights below can be granted before migrate.
CREATE SCHEMA IF NOT EXISTS appointment_relay AUTHORIZATION relay_owner;

-- The daemon: the relay's tables only, nothing of Canvas's. It reads the outbox and writes its delivery
-- state; it cannot write the outbox (migrations 0003 and 0004 revoke INSERT and UPDATE on it from every role
-- but its owner). Outbox partitions are made and dropped by two functions that run as relay_owner (migration
-- 0004), granted to the roles that may delete from the outbox: this one.
CREATE ROLE relay LOGIN;
GRANT USAGE ON SCHEMA appointment_relay TO relay;
ALTER DEFAULT PRIVILEGES FOR ROLE relay_owner IN SCHEMA appointment_relay
  GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO relay;
