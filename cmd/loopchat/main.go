// Command loopchat is the one loopchat binary: serve (a node), client (the
// terminal client and script runner), lb (active health checks for nginx),
// bench (the load generator and its comparisons), api, redis-migrate (one
// Redis onto a Redis Cluster) and version.
package main

import (
	"os"
)

func main() {
	os.Exit(execute(os.Args[1:]))
}
