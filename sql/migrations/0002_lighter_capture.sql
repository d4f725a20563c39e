-- Lighter capture triggers (issue 7, capture overhead): the two trigger functions without their
-- `SET search_path` clause. A function with a SET clause is called through PostgreSQL's security-definer
-- wrapper, which saves, parses, applies and restores the setting on every call and so recomputes the
-- namespace search path twice per captured row: about 5 µs of the ~50 µs a captured note state event costs
-- (perf on the backend; bench/results/notes.md). Nothing is lost by it: the functions are SECURITY INVOKER
-- (they run with the inserting session's own rights) and name every relation and function with its schema.

CREATE OR REPLACE FUNCTION appointment_relay.capture_appointment() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER AS $$
DECLARE
  event_id bigint;
BEGIN
  PERFORM pg_catalog.txid_current();
  INSERT INTO appointment_relay.outbox (source_table, operation, row_id, appointment_id, appointment_external_id,
                                        rescheduled_from_id, start_time, duration_minutes, entered_in_error,
                                        patient_id, patient_key, ordering_key)
  SELECT TG_TABLE_NAME, TG_OP, NEW.id, NEW.id, NEW.externally_exposable_id::text,
         NEW.appointment_rescheduled_from_id, NEW.start_time, NEW.duration_minutes,
         NEW.entered_in_error_id IS NOT NULL, NEW.patient_id,
         (SELECT p.key::text FROM public.api_patient p WHERE p.id = NEW.patient_id),
         NEW.externally_exposable_id::text
  RETURNING id INTO event_id;
  PERFORM pg_catalog.pg_notify('appointment_relay', event_id::text);
  RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION appointment_relay.capture_note_state() RETURNS trigger
LANGUAGE plpgsql SECURITY INVOKER AS $$
DECLARE
  event_id bigint;
BEGIN
  PERFORM pg_catalog.txid_current();
  INSERT INTO appointment_relay.outbox (source_table, operation, row_id, state, appointment_id,
                                        appointment_external_id, rescheduled_from_id, start_time,
                                        duration_minutes, entered_in_error, patient_id, patient_key,
                                        ordering_key)
  SELECT TG_TABLE_NAME, TG_OP, NEW.id, pg_catalog.rtrim(NEW.state::text), a.id, a.externally_exposable_id::text,
         a.appointment_rescheduled_from_id, a.start_time, a.duration_minutes,
         CASE WHEN a.id IS NULL THEN NULL ELSE a.entered_in_error_id IS NOT NULL END, a.patient_id,
         (SELECT p.key::text FROM public.api_patient p WHERE p.id = a.patient_id),
         a.externally_exposable_id::text
  FROM (SELECT 1) AS one
  LEFT JOIN LATERAL (
    SELECT c.id, c.externally_exposable_id, c.appointment_rescheduled_from_id, c.start_time, c.duration_minutes,
           c.entered_in_error_id, c.patient_id
    FROM public.api_appointment c
    WHERE c.note_id = NEW.note_id
      AND NOT EXISTS (SELECT 1 FROM public.api_appointment r WHERE r.appointment_rescheduled_from_id = c.id)
    ORDER BY c.id DESC
    LIMIT 1
  ) AS a ON true
  RETURNING id INTO event_id;
  PERFORM pg_catalog.pg_notify('appointment_relay', event_id::text);
  RETURN NULL;
END
$$;
