package bench

import (
	"os"
	"strings"
	"testing"
)

func labels(runs []run) string {
	var l []string
	for _, r := range runs {
		l = append(l, runLabel(r.Build.Name, r.Server, r.Transport, r.Round))
	}
	return strings.Join(l, ", ")
}

// Rounds run one after another, each with every server in the order asked,
// so a box that slows down slows them all alike; builds of one server run
// back to back; the echo server is the generator's own, once a round.
func TestPlanInterleaves(t *testing.T) {
	cc := CompareConfig{Scenario: "chat", Servers: []string{"gnet", "net", "echo"}, Repeat: 3, Binary: "/self"}
	cc.Builds = []Build{{Binary: "/self"}}
	want := "gnet round 1, net round 1, echo round 1, gnet round 2, net round 2, echo round 2, gnet round 3, net round 3, echo round 3"
	if got := labels(plan(&cc)); got != want {
		t.Errorf("plan:\n%s\nwant:\n%s", got, want)
	}

	cc.Repeat = 2
	cc.Builds = []Build{{"old", "/tmp/a"}, {"new", "/tmp/b"}}
	runs := plan(&cc)
	want = "old-gnet round 1, new-gnet round 1, old-net round 1, new-net round 1, echo round 1, " +
		"old-gnet round 2, new-gnet round 2, old-net round 2, new-net round 2, echo round 2"
	if got := labels(runs); got != want {
		t.Errorf("plan with builds:\n%s\nwant:\n%s", got, want)
	}
	for _, r := range runs {
		if want := map[string]string{"old": "/tmp/a", "new": "/tmp/b", "": "/self"}[r.Build.Name]; r.Build.Binary != want {
			t.Errorf("%s runs %s, want %s", runLabel(r.Build.Name, r.Server, r.Transport, r.Round), r.Build.Binary, want)
		}
	}

	// Over TCP and WebSocket: each loopchat server over both, back to
	// back; echo over TCP only.
	cc.Repeat, cc.Builds, cc.Transports = 1, []Build{{Binary: "/self"}}, []string{TransportTCP, TransportWS}
	if got, want := labels(plan(&cc)), "gnet round 1, gnet-ws round 1, net round 1, net-ws round 1, echo round 1"; got != want {
		t.Errorf("plan over TCP and WebSocket:\n%s\nwant:\n%s", got, want)
	}
	cc.Transports = nil

	// Echo compares only with message rates.
	cc.Scenario, cc.Repeat, cc.Builds = "history", 1, []Build{{Binary: "/self"}}
	if got := labels(plan(&cc)); got != "gnet round 1, net round 1" {
		t.Errorf("history plan: %s", got)
	}
}

func TestParseBuilds(t *testing.T) {
	got, err := ParseBuilds([]string{"old=/tmp/a", "new=./bin/loopchat", "/opt/x/loopchat-2"})
	if err != nil {
		t.Fatal(err)
	}
	want := []Build{{"old", "/tmp/a"}, {"new", "./bin/loopchat"}, {"loopchat-2", "/opt/x/loopchat-2"}}
	if len(got) != len(want) {
		t.Fatalf("%+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("build %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	for _, bad := range [][]string{
		{"a=/x", "a=/y"}, // twice the same name
		{"=/x"},          // no name
		{"a="},           // no path
		{"a/b=/x"},       // a name that cannot go into a ratio's or a directory's name
		{"new over old=/x"},
	} {
		if b, err := ParseBuilds(bad); err == nil {
			t.Errorf("ParseBuilds(%q) = %+v, want an error", bad, b)
		}
	}
}

func TestCompareConfigValidate(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cc := CompareConfig{Binary: self}
	if err := cc.Validate(); err != nil {
		t.Fatal(err)
	}
	if cc.Scenario != "chat" || cc.Repeat != 1 || len(cc.Servers) != 3 || len(cc.Builds) != 1 || cc.Builds[0].Binary != self {
		t.Errorf("defaults: %+v", cc)
	}
	for name, bad := range map[string]CompareConfig{
		"saturate with step":    {Binary: self, Config: Config{Saturate: true, Step: true}},
		"saturate for history":  {Binary: self, Scenario: "history", Config: Config{Saturate: true}},
		"negative repeat":       {Binary: self, Repeat: -1},
		"unknown server":        {Binary: self, Servers: []string{"gnet", "nginx"}},
		"unknown scenario":      {Binary: self, Scenario: "chaos"},
		"unknown transport":     {Binary: self, Transports: []string{"tcp", "quic"}},
		"a build that is not":   {Binary: self, Builds: []Build{{"old", "/nonexistent/loopchat"}}},
		"no binary to start at": {},
	} {
		if err := bad.Validate(); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	ok := CompareConfig{Binary: self, Scenario: "echo", Config: Config{Saturate: true}}
	if err := ok.Validate(); err != nil {
		t.Errorf("saturated echo: %v", err)
	}
}

func TestRunLine(t *testing.T) {
	r := Result{Build: "new", Server: "gnet", Scenario: "chat", Run: 2, Window: 1, MsgsPerSec: 18234.4, P50ms: 52.1, P99ms: 90.25,
		SendOKP99ms: 80, CPUMicrosPerMsg: 41.23, GenCPUMicrosPerMsg: 38}
	want := "new-gnet round 2 chat: 18234/s saturated, p50 52.10 p99 90.25 ms (SendOK p99 80.00), server 41.2 µs/msg (0.75 CPU), generator 38.0 µs/msg (0.69 CPU), lost 0 dup 0 errors 0"
	if got := RunLine(r); got != want {
		t.Errorf("RunLine:\n%s\nwant:\n%s", got, want)
	}
}
