"""Per-SM loop speed from `decode_timeline --raw` logs (r187): for each graph step, every block's loop
duration minus the step's median; then whether the SM or the block predicts it (the correlation between the
means over two halves of each SM's / block's samples), the fastest and slowest SMs, and the SMs more than 1 us
faster than the median. usage: python3 sm_speed.py TIMELINE.log [...]"""
import re,sys,statistics as st
def parse(fn):
    steps=[];cur=None
    for line in open(fn):
        if line.startswith('step '): cur=[];steps.append(cur)
        m=re.match(r'\| (\d+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \|',line)
        if m and cur is not None: cur.append((int(m[1]),int(m[2]),float(m[3]),float(m[4])))
    return steps
allsm={};allblk={}
for fn in sys.argv[1:]:
    steps=parse(fn)
    for si,s in enumerate(steps):
        if not s: continue
        durs=[e-b for _,_,b,e in s]; med=st.median(durs)
        print(fn[-20:],si,'n',len(s),'dur min %.2f med %.2f max %.2f'%(min(durs),med,max(durs)))
        for blk,sm,b,e in s:
            allsm.setdefault(sm,[]).append((e-b)-med)
            allblk.setdefault(blk,[]).append((e-b)-med)
# consistency: split samples of each SM into halves, correlate means
import random
def corr(d):
    xs=[];ys=[]
    for k,v in d.items():
        if len(v)>=4:
            h=len(v)//2; xs.append(st.mean(v[:h])); ys.append(st.mean(v[h:]))
    mx,my=st.mean(xs),st.mean(ys)
    c=sum((a-mx)*(b-my) for a,b in zip(xs,ys))/ (sum((a-mx)**2 for a in xs)*sum((b-my)**2 for b in ys))**0.5
    return c,len(xs)
print('SM consistency corr',corr(allsm))
print('block consistency corr',corr(allblk))
sms=sorted(allsm,key=lambda k:st.mean(allsm[k]))
print('slowest SMs',[(k,round(st.mean(allsm[k]),2),len(allsm[k])) for k in sms[-12:]])
print('fastest SMs',[(k,round(st.mean(allsm[k]),2)) for k in sms[:12]])
blks=sorted(allblk,key=lambda k:st.mean(allblk[k]))
print('slowest blocks',[(k,round(st.mean(allblk[k]),2)) for k in blks[-10:]])
print('sd of per-SM means %.2f, per-block means %.2f, all %.2f'%(st.pstdev([st.mean(v) for v in allsm.values()]),st.pstdev([st.mean(v) for v in allblk.values()]),st.pstdev([x for v in allsm.values() for x in v])))
ms=sorted((round(st.mean(v),1),k) for k,v in allsm.items())
import collections
print(collections.Counter(round(m*2)/2 for m,_ in ms))
print('fast (< -1 us):',sorted(k for m,k in ms if m<-1))
