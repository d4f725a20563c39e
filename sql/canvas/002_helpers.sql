-- Test and demo helpers that change the Canvas tables the way Canvas does (one function per user action),
-- so that tests speak of bookings and cancellations instead of rows. Tests and demos only.

CREATE SCHEMA IF NOT EXISTS canvas_test;

-- A state event on a note, as Canvas's note state machine records it.
CREATE OR REPLACE FUNCTION canvas_test.note_state(p_note_id integer, p_state text)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  v_id integer;
BEGIN
  INSERT INTO api_notestatechangeevent (note_id, state) VALUES (p_note_id, p_state) RETURNING id INTO v_id;
  UPDATE api_note SET modified = now() WHERE id = p_note_id;
  RETURN v_id;
END $$;

CREATE OR REPLACE FUNCTION canvas_test.create_patient(p_key text DEFAULT replace(gen_random_uuid()::text, '-', ''))
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  v_id integer;
BEGIN
  INSERT INTO api_patient (key, first_name, last_name) VALUES (p_key, 'Test', 'Patient') RETURNING id INTO v_id;
  RETURN v_id;
END $$;

-- Booking: a note for the patient, the appointment on it, then the note goes SCH -> BKD.
CREATE OR REPLACE FUNCTION canvas_test.book_appointment(p_patient_id integer, p_start timestamptz,
                                                        p_duration_minutes integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  v_note_id integer;
  v_id integer;
BEGIN
  INSERT INTO api_note (patient_id) VALUES (p_patient_id) RETURNING id INTO v_note_id;
  INSERT INTO api_appointment (patient_id, note_id, start_time, duration_minutes, status)
  VALUES (p_patient_id, v_note_id, p_start, p_duration_minutes, 'confirmed')
  RETURNING id INTO v_id;
  PERFORM canvas_test.note_state(v_note_id, 'SCH');
  PERFORM canvas_test.note_state(v_note_id, 'BKD');
  RETURN v_id;
END $$;

-- Rescheduling: a new appointment row on the same note, pointing back at the old one, and the note goes
-- SCH -> BKD again. The old row stays as history with its status untouched: what makes the new row current
-- is the chain (no row is rescheduled from it), not a status, and that is all the relay relies on.
CREATE OR REPLACE FUNCTION canvas_test.reschedule(p_appointment_id integer, p_new_start timestamptz,
                                                  p_new_duration_minutes integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  v_old api_appointment%ROWTYPE;
  v_id integer;
BEGIN
  SELECT * INTO STRICT v_old FROM api_appointment WHERE id = p_appointment_id;
  INSERT INTO api_appointment (patient_id, note_id, appointment_rescheduled_from_id, start_time,
                               duration_minutes, status, provider_id, location_id, note_type_id)
  VALUES (v_old.patient_id, v_old.note_id, v_old.id, p_new_start, p_new_duration_minutes, 'confirmed',
          v_old.provider_id, v_old.location_id, v_old.note_type_id)
  RETURNING id INTO v_id;
  IF v_old.note_id IS NOT NULL THEN
    PERFORM canvas_test.note_state(v_old.note_id, 'SCH');
    PERFORM canvas_test.note_state(v_old.note_id, 'BKD');
  END IF;
  RETURN v_id;
END $$;

-- A status change of the appointment plus a state event on its note; returns the event id.
CREATE OR REPLACE FUNCTION canvas_test.appointment_state(p_appointment_id integer, p_state text,
                                                         p_status text DEFAULT NULL)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  v_note_id integer;
BEGIN
  SELECT note_id INTO STRICT v_note_id FROM api_appointment WHERE id = p_appointment_id;
  IF v_note_id IS NULL THEN
    RAISE EXCEPTION 'appointment % has no note', p_appointment_id;
  END IF;
  IF p_status IS NOT NULL THEN
    UPDATE api_appointment SET status = p_status, modified = now() WHERE id = p_appointment_id;
  END IF;
  RETURN canvas_test.note_state(v_note_id, p_state);
END $$;

CREATE OR REPLACE FUNCTION canvas_test.cancel(p_appointment_id integer)
RETURNS integer LANGUAGE sql AS $$ SELECT canvas_test.appointment_state(p_appointment_id, 'CLD', 'cancelled') $$;

-- Restoring a cancelled appointment: the note goes CLD -> RVT and the appointment is confirmed again.
CREATE OR REPLACE FUNCTION canvas_test.restore(p_appointment_id integer)
RETURNS integer LANGUAGE sql AS $$ SELECT canvas_test.appointment_state(p_appointment_id, 'RVT', 'confirmed') $$;

CREATE OR REPLACE FUNCTION canvas_test.no_show(p_appointment_id integer)
RETURNS integer LANGUAGE sql AS $$ SELECT canvas_test.appointment_state(p_appointment_id, 'NSW', 'noshowed') $$;

CREATE OR REPLACE FUNCTION canvas_test.check_in(p_appointment_id integer)
RETURNS integer LANGUAGE sql AS $$ SELECT canvas_test.appointment_state(p_appointment_id, 'CVD', 'arrived') $$;

-- Marks an appointment deleted / entered in error (Canvas points at the entered-in-error record; any id will do).
CREATE OR REPLACE FUNCTION canvas_test.enter_in_error(p_appointment_id integer)
RETURNS void LANGUAGE sql AS $$
  UPDATE api_appointment SET entered_in_error_id = 1, modified = now() WHERE id = p_appointment_id
$$;

-- A schedule block: an appointment row with no patient and no note.
CREATE OR REPLACE FUNCTION canvas_test.schedule_block(p_start timestamptz, p_duration_minutes integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  v_id integer;
BEGIN
  INSERT INTO api_appointment (start_time, duration_minutes, status)
  VALUES (p_start, p_duration_minutes, 'confirmed')
  RETURNING id INTO v_id;
  RETURN v_id;
END $$;
