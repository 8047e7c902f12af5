"""Medians of alternated bench_cuda runs: DIR/ab/VARIANT-*.md files, one column per VARIANT (graph us per step, single
launches in brackets, every round in square brackets). usage: python3 ab_medians.py DIR VARIANT1,VARIANT2,..."""
import re,statistics,collections,glob,sys
D=sys.argv[1]; vs=sys.argv[2].split(',')
rows=collections.defaultdict(list)
for f in glob.glob(f'{D}/ab/*.md'):
    v=f.split('/')[-1].split('-')[0]
    for l in open(f):
        if not l.startswith('| ') or 'format' in l or '---' in l: continue
        c=[x.strip() for x in l.strip().strip('|').split('|')]
        if len(c)<16: continue  # decode rows only (the --append tables have fewer columns)
        try: med=float(c[7]); gr=float(c[8])
        except: continue
        rows[(c[0],int(c[2]),c[3],int(c[4]),int(c[5]),v)].append((med,gr))
keys=sorted({k[:5] for k in rows})
print("shape | "+" | ".join(f"{v} graph (single)" for v in vs))
for k in keys:
    out=[]
    for v in vs:
        r=rows.get(k+(v,))
        if not r: out.append('-'); continue
        out.append(f"{statistics.median(x[1] for x in r):6.1f} ({statistics.median(x[0] for x in r):6.1f}) [{','.join(f'{x[1]:.1f}' for x in r)}]")
    print(f"{k[0]} d{k[1]} {k[2]} b{k[3]} {k[4]:6} | "+" | ".join(out))
