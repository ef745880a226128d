package bench

import (
	"fmt"
	"image/color"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

// WriteTable prints results as an aligned table. A history row counts
// pages where the header says msgs, and a line under the table says so.
func WriteTable(w io.Writer, results []Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "server\tscenario\tconns\toffered/s\tmsgs/s\tp50 ms\tp99 ms\tp99.9 ms\tSendOK p99\tlate p99\tRSS B/conn\tlive B/conn\tCPU µs/msg\tgen µs/msg\tlost\tdup\terrors\t")
	for _, r := range results {
		offered := optional(r.OfferedRate, "%.0f")
		if r.Window > 0 {
			offered = "saturated" // closed loop: as much as got through
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%.0f\t%.2f\t%.2f\t%.2f\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t\n",
			r.Server, r.Scenario, r.Conns, offered, r.MsgsPerSec, r.P50ms, r.P99ms, r.P999ms,
			optional(r.SendOKP99ms, "%.2f"), optional(r.LateP99ms, "%.2f"),
			optional(r.RSSBytesPerConn, "%.0f"), optional(r.LiveBytesPerConn, "%.0f"), optional(r.CPUMicrosPerMsg, "%.1f"), optional(r.GenCPUMicrosPerMsg, "%.1f"), r.Lost, r.Duplicates, r.Errors)
	}
	tw.Flush()
	for _, r := range results {
		if r.Scenario == "history" {
			fmt.Fprintln(w, "history: msgs/s are 50-message History pages per second; latency and CPU are per page; errors include pages that failed their checks")
			break
		}
	}
	for _, r := range results {
		if r.Scenario == "broadcast" {
			fmt.Fprintf(w, "broadcast (%s): %d broadcasts to %d connections; until 99%% had each: %s ms, until all: %s ms (the slowest broadcast); latency and CPU are per delivery\n",
				r.Server, r.Sent, r.Conns, optional(r.Reach99ms, "%.2f"), optional(r.Reach100ms, "%.2f"))
		}
	}
}

func optional(v float64, format string) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf(format, v)
}

// Plot draws throughput and latency percentiles over time for each result
// into file (.png or .svg).
func Plot(file string, results []Result) error {
	tput, lat := plot.New(), plot.New()
	tput.Title.Text = "delivered per second"
	tput.X.Label.Text, tput.Y.Label.Text = "seconds", "msgs/s"
	lat.Title.Text = "latency per second (p50 dashed, p99 solid, generator's lateness p99 dotted)"
	lat.X.Label.Text, lat.Y.Label.Text = "seconds", "ms"
	palette := []color.RGBA{{0x1f, 0x77, 0xb4, 255}, {0xd6, 0x27, 0x28, 255}, {0x2c, 0xa0, 0x2c, 255},
		{0xff, 0x7f, 0x0e, 255}, {0x94, 0x67, 0xbd, 255}}
	for i, r := range results {
		if len(r.Timeline) == 0 {
			continue
		}
		col := palette[i%len(palette)]
		name := r.Server + " " + r.Scenario
		if r.Build != "" {
			name = r.Build + " " + name
		}
		if r.Run > 1 {
			name += fmt.Sprintf(" #%d", r.Run)
		}
		var xs, p50, p99, late plotter.XYs
		for _, pt := range r.Timeline {
			xs = append(xs, plotter.XY{X: pt.Second, Y: pt.MsgsPerSec})
			p50 = append(p50, plotter.XY{X: pt.Second, Y: pt.P50ms})
			p99 = append(p99, plotter.XY{X: pt.Second, Y: pt.P99ms})
			late = append(late, plotter.XY{X: pt.Second, Y: pt.LateP99ms})
		}
		dashed, dotted := []vg.Length{vg.Points(4), vg.Points(3)}, []vg.Length{vg.Points(1), vg.Points(2)}
		for _, l := range []struct {
			p      *plot.Plot
			xy     plotter.XYs
			dashes []vg.Length
			legend bool
		}{{tput, xs, nil, true}, {lat, p99, nil, true}, {lat, p50, dashed, false}, {lat, late, dotted, false}} {
			line, err := plotter.NewLine(l.xy)
			if err != nil {
				return err
			}
			line.Color = col
			line.Width = vg.Points(1.5)
			line.Dashes = l.dashes
			l.p.Add(line)
			if l.legend {
				l.p.Legend.Add(name, line)
			}
		}
	}
	tput.Legend.Top, lat.Legend.Top = true, true
	const w, h = 11 * vg.Inch, 4.5 * vg.Inch
	var c draw.Canvas
	var write func(io.Writer) error
	switch strings.ToLower(filepath.Ext(file)) {
	case ".png":
		img := vgimg.New(w, h)
		c = draw.New(img)
		write = func(out io.Writer) error { _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(out); return err }
	case ".svg":
		svg := vgsvg.New(w, h)
		c = draw.New(svg)
		write = func(out io.Writer) error { _, err := svg.WriteTo(out); return err }
	default:
		return fmt.Errorf("plot: %s: want a .png or .svg file", file)
	}
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 2,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	plots := [][]*plot.Plot{{tput, lat}}
	canvases := plot.Align(plots, tiles, c)
	tput.Draw(canvases[0][0])
	lat.Draw(canvases[0][1])
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
