// Package web holds the browser chat page a node serves with --web
// (docs/web.md). dist/ is built from src/ and proto/chat.proto by
// scripts/build-web.sh (npm, protoc-gen-es, esbuild) and committed, so
// building the binary and running the tests need no Node.
package web

import (
	"embed"
	"io/fs"
)

//go:embed dist/index.html dist/app.js dist/style.css
var dist embed.FS

// Files returns the page's files at their URL paths without the leading
// slash: index.html, app.js, style.css.
func Files() fs.FS {
	sub, err := fs.Sub(dist, "dist")
	if err != nil {
		panic(err) // "dist" is a valid path; embed guarantees it exists
	}
	return sub
}
