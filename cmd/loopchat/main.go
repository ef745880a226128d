// Command loopchat is the one loopchat binary: serve, client, version.
package main

import (
	"os"
)

func main() {
	os.Exit(execute(os.Args[1:]))
}
