-- Upgrading an installation whose roles were set up by the README before migration 0003 (which granted
-- Canvas's application role USAGE on the relay's schema and INSERT on the outbox, and some installations
-- added SELECT so that bookings worked). Run it as a superuser or the DBA, after `appointment-relay migrate`
-- has applied 0003, in Canvas's database:
--     psql -v ON_ERROR_STOP=1 -d canvas -f sql/privileges_upgrade.sql
-- From 0003 on the capture triggers run as their owner and Canvas's role needs nothing of the relay's
-- schema. 0003 already took INSERT and UPDATE on the outbox from every role but its owner (the daemon's
-- role included: it only reads and deletes outbox rows); what it cannot tell from the daemon's rights is
-- revoked here by name. The daemon's and the owner's grants of before stay as they are.
--
-- The name canvas_app is replaced as in sql/privileges.sql (whole words, lines that are not comments).
REVOKE ALL ON ALL TABLES IN SCHEMA appointment_relay FROM canvas_app;
REVOKE ALL ON SCHEMA appointment_relay FROM canvas_app;
