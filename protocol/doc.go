// Package protocol gives loopchat's frames their meaning: encoding a Frame
// into a length-prefixed buffer and back, which bodies are requests,
// responses and pushes, the validation rules for every client-supplied field,
// and the error codes a failed request answers with.
//
// Both the server and the client SDK use it, so the rules cannot drift
// apart. It depends only on codec and the generated proto package.
package protocol
