-- Endpoint health and control: the breaker's state, a pause set by `appointment-relay pause`, and where an
-- endpoint the installation had never seen started. One row per endpoint, written rarely (a state change, a
-- pause, a first sight), read by `status` and by the daemon when it becomes active (a restart, or the
-- standby taking over, sees the breaker open and the pause as they were).
CREATE TABLE appointment_relay.endpoint_state (
  endpoint text PRIMARY KEY,
  -- Written by the daemon: healthy, failing (failed attempts in a row, breaker closed) or open (the breaker:
  -- one probe at a time at probe_at, probe_delay_ms apart, doubling).
  health text NOT NULL DEFAULT 'healthy' CHECK (health IN ('healthy', 'failing', 'open')),
  health_reason text,
  health_since timestamptz,
  probe_at timestamptz,
  probe_delay_ms bigint NOT NULL DEFAULT 0,
  -- Written by `pause` and `resume`: a paused endpoint gets nothing, its events wait.
  paused boolean NOT NULL DEFAULT false,
  paused_by text,
  paused_at timestamptz,
  pause_reason text,
  -- Where the endpoint started when the installation first saw it (its first watermark).
  start_id bigint,
  start_reason text,
  started_at timestamptz,
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- An endpoint that has outcomes recorded is not new: it keeps reading from its watermark (0 if it never had
-- one written), as before this migration, whatever its backfill setting says.
INSERT INTO appointment_relay.endpoint_cursor (endpoint, done_through)
SELECT endpoint, 0 FROM appointment_relay.delivery
UNION
SELECT endpoint, 0 FROM appointment_relay.delivery_batch
ON CONFLICT (endpoint) DO NOTHING;

-- Gives every role the rights on target that it has on source (SELECT, INSERT, UPDATE, DELETE), so that a
-- new table is usable by whoever uses its neighbours, whether or not sql/privileges.sql's default
-- privileges were set up. For migrations; run as the owner.
CREATE FUNCTION appointment_relay.grant_like(source regclass, target regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  grantee_name text;
  privilege text;
BEGIN
  FOR grantee_name, privilege IN
    SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END, a.privilege_type
    FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
    WHERE c.oid = source AND a.grantee <> c.relowner
      AND a.privilege_type IN ('SELECT', 'INSERT', 'UPDATE', 'DELETE')
  LOOP
    EXECUTE pg_catalog.format('GRANT %s ON %s TO %s', privilege, target, grantee_name);
  END LOOP;
END
$$;
REVOKE EXECUTE ON FUNCTION appointment_relay.grant_like(regclass, regclass) FROM PUBLIC;

-- The daemon writes health and starts, `pause` and `resume` (run as the daemon's role) the pause.
SELECT appointment_relay.grant_like('appointment_relay.endpoint_cursor', 'appointment_relay.endpoint_state');
