// Package web holds the browser chat page a node serves with --web
// (docs/web.md). dist/app.js is built from src/app.js and proto/chat.proto
// by scripts/build-web.sh (npm, protoc-gen-es, esbuild) and committed, so
// building the binary and running the tests need no Node.
package web

import "embed"

// The page and its style sheet are served as written; only the script is
// built.
//
//go:embed src/index.html src/style.css dist/app.js
var files embed.FS

// Files returns the page's files by URL path without the leading slash:
// index.html, app.js, style.css.
func Files() map[string][]byte {
	out := make(map[string][]byte, 3)
	for name, path := range map[string]string{
		"index.html": "src/index.html",
		"style.css":  "src/style.css",
		"app.js":     "dist/app.js",
	} {
		b, err := files.ReadFile(path)
		if err != nil {
			panic(err) // embedded above: the build guarantees it exists
		}
		out[name] = b
	}
	return out
}
