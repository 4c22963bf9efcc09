// Builds one JavaScript controller with ComponentizeJS: node build.mjs
// ENTRY WIT OUT, run with the folder of ENTRY as the working directory
// (ComponentizeJS 0.23 maps the sources relative to it). `switchyard
// build` writes this next to its ComponentizeJS and runs it.
import { componentize } from "@bytecodealliance/componentize-js";
import { writeFile } from "node:fs/promises";

const [sourcePath, witPath, out] = process.argv.slice(2);
const { component } = await componentize({
  sourcePath,
  witPath,
  worldName: "controller",
  // A controller has no use for outgoing HTTP; its console and clocks stay.
  disableFeatures: ["http", "fetch-event"],
});
await writeFile(out, component);
