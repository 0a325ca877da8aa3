// The seed example of Ray's tracing guide, as a wtrace task in JavaScript.
//
// Build: node guest-sdk/js/build.mjs guest-sdk/js/examples/task hello-js.wasm
// Run:   wtrace run --tracing-startup-hook=default hello-js.wasm 'my-function()' 'my-func()'

import { inSpan } from "wtrace-guest";

export function myFunction() {
  return 1;
}

export function myFunc() {
  inSpan("foo", () => {
    console.log("hello from inside span foo");
  });
}
