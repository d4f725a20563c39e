-- Dead letters stay until they are handled: retention (database.retention) never removes them (drop_partition
-- copies them to outbox_kept before it drops their partition); this removes those older than
-- database.dead_letter_retention (30 days by default), by their last attempt. An endpoint's dead letter goes
-- with its delivery row; the kept outbox row goes once no endpoint holds it as a dead letter, a retry or a
-- replay. Runs as the owner (the daemon may not delete from outbox_kept); returns the dead letters removed.
CREATE FUNCTION appointment_relay.purge_dead_letters(older_than interval) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  ids bigint[];
BEGIN
  PERFORM set_config('lock_timeout', '100ms', true);
  WITH gone AS (
    DELETE FROM appointment_relay.delivery d
    WHERE d.state = 'dead' AND coalesce(d.last_attempt_at, d.first_attempt_at) < now() - older_than
    RETURNING d.event_id)
  SELECT array_agg(event_id) INTO ids FROM gone;
  IF ids IS NULL THEN
    RETURN 0;
  END IF;
  DELETE FROM appointment_relay.outbox_kept k
  WHERE k.id = ANY (ids)
    AND NOT EXISTS (SELECT 1 FROM appointment_relay.delivery d
                    WHERE d.event_id = k.id AND d.state IN ('dead', 'replay', 'retrying'));
  RETURN cardinality(ids);
END
$$;
REVOKE EXECUTE ON FUNCTION appointment_relay.purge_dead_letters(interval) FROM PUBLIC;

-- For the roles that may run retention (drop_partition), nobody else.
DO $$
DECLARE
  grantee_name text;
BEGIN
  FOR grantee_name IN
    SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
    FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
    WHERE p.oid = 'appointment_relay.drop_partition(text[], interval)'::regprocedure AND a.grantee <> p.proowner
      AND a.privilege_type = 'EXECUTE'
  LOOP
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION appointment_relay.purge_dead_letters(interval) TO %s',
                              grantee_name);
  END LOOP;
END
$$;
