//go:build !unix

package cli

import "golang.org/x/term"

// watchResize does nothing where there is no SIGWINCH: the size read at
// the start stays.
func watchResize(int, *term.Terminal) (stop func()) { return func() {} }
