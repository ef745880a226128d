package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/term"

	"github.com/loopchat/loopchat/client"
)

// RunTerminal is the interactive mode, on a terminal: in and out are it
// (os.Stdin and os.Stdout), in raw mode while it runs. golang.org/x/term's
// Terminal edits the line (arrows, Home/End, Ctrl-W, Ctrl-U, Ctrl-K, Up
// and Down through the last lines typed) and redraws it under whatever is
// printed meanwhile. It returns at /quit, Ctrl-D on an empty line, Ctrl-C,
// or when ctx ends.
func RunTerminal(ctx context.Context, in, out *os.File, opts Options) error {
	c, err := client.Dial(ctx, opts.Client)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrConnect, err)
	}
	fd := int(in.Fd())
	state, err := term.MakeRaw(fd)
	if err != nil {
		c.Close()
		return err
	}
	defer func() { _ = term.Restore(fd, state) }()

	t := term.NewTerminal(struct {
		io.Reader
		io.Writer
	}{in, out}, "> ")
	if w, h, err := term.GetSize(int(out.Fd())); err == nil {
		_ = t.SetSize(w, h)
	}
	defer watchResize(int(out.Fd()), t)()

	k := newConsole(t, c, opts)
	defer k.stop()
	err = k.run(ctx)
	// In raw mode a newline does not return the carriage: leave the
	// shell's prompt a clean line of its own.
	_, _ = io.WriteString(out, "\r\n")
	return err
}

// run reads and runs lines until the user leaves.
func (k *console) run(ctx context.Context) error {
	k.println("connected to " + k.opts.Client.Addr + "; /help lists commands, Tab completes, Ctrl-D leaves")
	if k.opts.User != "" {
		if k.opts.Password != "" {
			k.exec(ctx, "login", []string{k.opts.User, k.opts.Password}, "")
		} else {
			k.askPassword(ctx, "login", k.opts.User)
		}
	}
	for {
		k.setPrompt()
		line, err := k.readLine(ctx)
		switch {
		case err == nil, errors.Is(err, term.ErrPasteIndicator):
		case errors.Is(err, io.EOF), ctx.Err() != nil:
			return nil
		default:
			return err
		}
		line = strings.TrimSpace(line)
		switch line {
		case "":
		case "/quit", "/exit":
			return nil
		default:
			k.handle(ctx, line)
		}
	}
}

type readRequest struct {
	password bool
	prompt   string // for a password
}

type readResult struct {
	line string
	err  error
}

// reader reads the terminal when asked to, so that run can give up
// waiting when ctx ends; a read cannot be interrupted. It is asked for one
// line at a time, so the prompt comes back only once the last command has
// printed all it had to say.
func (k *console) reader() {
	for {
		var req readRequest
		select {
		case req = <-k.reads:
		case <-k.done:
			return
		}
		var r readResult
		if req.password {
			r.line, r.err = k.t.ReadPassword(req.prompt)
		} else {
			r.line, r.err = k.t.ReadLine()
		}
		select {
		case k.lines <- r:
		case <-k.done:
			return
		}
	}
}

func (k *console) read(ctx context.Context, req readRequest) (string, error) {
	k.reads <- req
	select {
	case r := <-k.lines:
		return r.line, r.err
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

func (k *console) readLine(ctx context.Context) (string, error) {
	return k.read(ctx, readRequest{})
}

// readPassword reads a line without echo (and without completion, or
// history: term.Terminal keeps neither for it).
func (k *console) readPassword(ctx context.Context, prompt string) (string, error) {
	return k.read(ctx, readRequest{password: true, prompt: prompt})
}
