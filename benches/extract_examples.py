"""Extract promptflow's examples (flows/standard, flows/chat, flows/evaluation, flex-flows, prompty) from a
git dir (a bare mirror may lack some large blobs: those files are left out and counted).

    python3 benches/extract_examples.py GIT_DIR DEST
"""
import subprocess, sys, os
git, dest = sys.argv[1], sys.argv[2]
prefixes = ["examples/flows/standard/", "examples/flows/chat/", "examples/flows/evaluation/", "examples/flex-flows/", "examples/prompty/"]
ls = subprocess.run(["git", "--git-dir", git, "ls-tree", "-r", "HEAD", "--"] + [p.rstrip("/") for p in prefixes], capture_output=True, text=True, check=True).stdout
entries = []
for line in ls.splitlines():
    meta, path = line.split("\t", 1)
    mode, typ, sha = meta.split()
    if typ == "blob": entries.append((mode, sha, path))
p = subprocess.Popen(["git", "--git-dir", git, "cat-file", "--batch"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
missing = 0
for mode, sha, path in entries:
    p.stdin.write((sha + "\n").encode()); p.stdin.flush()
    header = p.stdout.readline().decode().split()
    if header[-1] == "missing":
        missing += 1; continue
    size = int(header[2]); data = p.stdout.read(size); p.stdout.read(1)
    out = os.path.join(dest, path)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    if mode == "120000":
        try: os.symlink(data.decode(), out)
        except FileExistsError: pass
        continue
    with open(out, "wb") as f: f.write(data)
    if mode == "100755": os.chmod(out, 0o755)
print(f"{len(entries)} files, {missing} missing", file=sys.stderr)
