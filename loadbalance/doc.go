// Package loadbalance is `loopchat lb`: active health checking for an
// nginx stream load balancer in front of loopchat nodes.
//
// Open-source nginx only has passive checks (a node is skipped after
// max_fails failed connects), which never notice a node that accepts
// connections but does not answer (hung, overloaded), nor one that is
// draining. The Balancer discovers nodes from the cluster registry in Redis
// and/or a static list, probes each with a protocol Ping (down after Fall
// misses, up after Rise successes), leaves draining nodes out, and renders
// the nginx upstream include with the nodes in rotation — atomically,
// checked with `nginx -t`, and reloaded only when the set changed.
//
// Concurrency: Run owns all state; probes of one round run in parallel and
// report back before the round ends. States and Ready may be called from
// any goroutine.
package loadbalance
