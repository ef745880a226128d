// Package server is a loopchat node: the engines that accept connections
// and move bytes (gnet reactors, or goroutine-per-connection on package
// net), the sessions and request handlers, and the Store and Broker
// implementations behind them.
//
// # Concurrency contract
//
//   - gnet event-loop callbacks (OnOpen, OnTraffic, OnClose) never wait: they
//     decode frames, check the per-connection rate limit and queue requests.
//     Nothing on a loop touches the store, the broker or bcrypt.
//   - Each connection's requests run on the worker pool, one at a time and
//     in arrival order (the connection's mailbox); different connections run
//     in parallel. The net engine runs them inline on the connection's
//     reader goroutine, which gives the same order.
//   - Writes to a connection (responses, pushes, kicks) may come from any
//     goroutine and never block: they are queued (in the connection's out
//     buffer, flushed by its gnet loop's writer task, or the net engine's
//     writer queue), bounded in bytes by Options.MaxOutbound.
//     A kick's frame is queued last, after whole frames only, and the
//     connection closes once it is in the kernel — or is reset when the
//     client has not read it within 30 s (defaultWriteWait); a stream never
//     ends cleanly inside a frame.
//   - Store and Broker methods are safe for concurrent use and may block.
//     The Broker's EventHandler must not block. The embedded store has two
//     goroutines of its own: the message log writer (sends and acks, one
//     fdatasync per batch) and the bbolt committer (everything else, and
//     the lazy copy of logged messages and acks); a caller waits for the
//     one its write needs. The group index (fanout.go) has one goroutine
//     that applies changes to the group channels the node hears, in
//     batches; a login or join waits for its batch's SUBSCRIBE, the
//     broker's handler only queues (its queue grows with notices not yet
//     applied, one per join or leave heard).
//   - Every queue is bounded: mailboxes by Options.MaxPending, the run queue
//     by the number of connections, outbound bytes by Options.MaxOutbound,
//     the store's commit and log queues by their batch size (writers wait),
//     logged messages not yet copied into bbolt (the log writer waits for a
//     commit past 100,000), and the pushes held during an inbox replay by a
//     fixed cap.
package server
