// Nanoseconds per classification, JSON payload included, for each outcome the classifier can give.
#include <benchmark/benchmark.h>

#include "appointment_relay/classifier.hpp"

namespace appointment_relay {
namespace {

captured_change created_row() {
  captured_change c;
  c.table = source_table::appointment;
  c.appointment_id = 41;
  c.appointment_external_id = "e999b5c7-d12f-498c-816a-f3c66946a911";
  c.start_time = 1640381400;
  c.duration_minutes = 30;
  c.patient_id = 7;
  c.patient_key = "06669a76329f4577bea114bc50072da6";
  return c;
}

void run(benchmark::State& state, const captured_change& change) {
  for (auto _ : state) {
    auto result = classify(change);
    benchmark::DoNotOptimize(result);
  }
}

void BM_created(benchmark::State& state) {
  run(state, created_row());
}

void BM_rescheduled(benchmark::State& state) {
  auto c = created_row();
  c.rescheduled_from_id = 40;
  run(state, c);
}

void BM_cancelled(benchmark::State& state) {
  auto c = created_row();
  c.table = source_table::note_state_event;
  c.state = "CLD";
  run(state, c);
}

void BM_ignored_other_state(benchmark::State& state) {
  auto c = created_row();
  c.table = source_table::note_state_event;
  c.state = "BKD";
  run(state, c);
}

void BM_ignored_update(benchmark::State& state) {
  auto c = created_row();
  c.operation = change_operation::update;
  run(state, c);
}

void BM_rejected_bad_key(benchmark::State& state) {
  auto c = created_row();
  c.patient_key = "06669A76329F4577BEA114BC50072DA6";
  run(state, c);
}

void BM_format_utc(benchmark::State& state) {
  std::int64_t t = 1640381400;
  for (auto _ : state) {
    auto text = format_utc(t);
    benchmark::DoNotOptimize(text);
    t += 86399;
    if (t > 253402300799) t = 0;
  }
}

BENCHMARK(BM_created);
BENCHMARK(BM_rescheduled);
BENCHMARK(BM_cancelled);
BENCHMARK(BM_ignored_other_state);
BENCHMARK(BM_ignored_update);
BENCHMARK(BM_rejected_bad_key);
BENCHMARK(BM_format_utc);

}  // namespace
}  // namespace appointment_relay

BENCHMARK_MAIN();
