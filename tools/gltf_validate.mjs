// Validate glTF/GLB files with the Khronos glTF-Validator (npm package "gltf-validator").
//
// Usage: node tools/gltf_validate.mjs FILE [FILE...]
// Prints one JSON array on stdout, one validation report per file (the validator's report object:
// report.issues.numErrors, numWarnings, messages[], ...). Exit status: 0 when no file has errors, 1 when some
// file has validation errors, 2 on usage errors or when a file cannot be read or parsed at all.
import { readFile } from "node:fs/promises";
import path from "node:path";
import validator from "gltf-validator";

async function validateFile(file) {
  const bytes = new Uint8Array(await readFile(file));
  return validator.validateBytes(bytes, {
    uri: path.basename(file),
    maxIssues: 200,
    externalResourceFunction: async (uri) =>
      new Uint8Array(await readFile(path.resolve(path.dirname(file), decodeURIComponent(uri)))),
  });
}

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node tools/gltf_validate.mjs FILE [FILE...]");
  process.exit(2);
}
try {
  const reports = [];
  for (const file of files) reports.push(await validateFile(file));
  console.log(JSON.stringify(reports));
  process.exit(reports.some((r) => r.issues.numErrors > 0) ? 1 : 0);
} catch (err) {
  console.error(`gltf_validate: ${err}`);
  process.exit(2);
}
