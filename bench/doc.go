// Package bench is `loopchat bench`: a C10K load generator for loopchat
// servers (and for a bare echo server with the same framing, the upper
// bound of this stack), with scenarios, side-by-side comparisons, reports
// and plots. See docs/BENCHMARKS.md.
//
// The generator is lean on purpose — one reader goroutine per connection
// (none for the connections a login storm only holds), writes under a
// mutex, a fixed pool of dialers — because on one machine its CPU is the
// server's; every result reports both, per message. Its garbage collector
// is held back to a heap limit and run between measured phases, with a
// pause after it before the next phase, so that its own pauses are not
// charged to the server. Latency is measured from
// the time a message was due to be sent (open loop), so a server stall
// shows up in the percentiles instead of silently slowing the offered
// load. The same clock also charges the generator's own lateness (a
// sender goroutine woken after its due time) to the latency, so every
// open-loop result reports that lateness's p99 beside it (overall and for
// each second of the timeline), and chat the p99 until SendOK: where the
// lateness is a large part of the tail, the CPUs the generator shares, not
// the server, set it.
//
// The headline figures are not latencies but what a server delivers at
// saturation and the CPU it spends per message: chat and echo can run
// closed loop (Config.Saturate), a window of messages in flight per
// sender, offering as much as the server takes whatever the box's state;
// and Compare repeats its runs in interleaved rounds and reports each
// server's medians and ranges, and the ratios of the medians (Summarize,
// Ratios), because one run on a shared box measures the box.
package bench
