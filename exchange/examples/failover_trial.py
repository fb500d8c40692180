#!/usr/bin/env python3
# A manual failover trial with two exchange-node processes on one PostgreSQL and the machine's Mosquitto
# (issue 13): zones shared 2 + 2, SIGSTOP / SIGCONT of one, SIGKILL of the other, a restart. Prints how
# long each step took. Needs `cargo build -p exchange --bin exchange-node` and an empty database:
#   psql -h 127.0.0.1 -U postgres -c 'CREATE DATABASE scaletrial'; python3 exchange/examples/failover_trial.py
# Not a CI test (timings on a shared machine); the in-process tests are exchange/tests/scale_out.rs.
import subprocess, time, os, signal, threading, queue
BIN=os.environ.get('EXCHANGE_NODE', 'target/debug/exchange-node')
DB=os.environ.get('TRIAL_DATABASE_URL', 'postgres://postgres@127.0.0.1:5432/scaletrial')
def node(name):
    p=subprocess.Popen([BIN,'--db',DB,'--mqtt','127.0.0.1:1883','--client-id','trial-'+name,'--lease-ttl-ms','1500','--lease-renew-interval-ms','300'],stdin=subprocess.PIPE,stdout=subprocess.PIPE,text=True,bufsize=1)
    q=queue.Queue()
    threading.Thread(target=lambda:[q.put(l.strip()) for l in p.stdout],daemon=True).start()
    return p,q
def wait_line(q,prefix,timeout=60):
    end=time.time()+timeout
    while time.time()<end:
        try:
            l=q.get(timeout=1)
            if l.startswith(prefix): return l
        except queue.Empty: pass
    return None
def zones(n):
    p,q=n
    p.stdin.write('zones\n'); p.stdin.flush()
    l=wait_line(q,'zones',10)
    return l.split()[1:] if l else None
def until(cond, what, timeout=30):
    t0=time.time()
    while time.time()-t0<timeout:
        r=cond()
        if r: print(f'{what}: after {time.time()-t0:.1f}s'); return True
        time.sleep(0.2)
    print(f'{what}: NOT within {timeout}s'); return False
a=node('a'); print('a', wait_line(a[1],'ready'))
subprocess.run(['psql','-q','-h','127.0.0.1','-U','postgres','-d','scaletrial','-c',"INSERT INTO zones VALUES ('z1','z1',900000,'utility:z1',0),('z2','z2',900000,'utility:z2',0),('z3','z3',900000,'utility:z3',0),('z4','z4',900000,'utility:z4',0)"],check=True)
until(lambda: len(zones(a) or [])==4, 'A alone takes 4 zones registered while it runs')
b=node('b'); print('b', wait_line(b[1],'ready'))
until(lambda: len(zones(a) or [])==2 and len(zones(b) or [])==2, 'shared 2+2')
print('A', zones(a), 'B', zones(b))
os.kill(a[0].pid, signal.SIGSTOP); t=time.time()
until(lambda: len(zones(b) or [])==4, 'SIGSTOP A: B owns all 4')
os.kill(a[0].pid, signal.SIGCONT)
until(lambda: len(zones(a) or [])==2 and len(zones(b) or [])==2, 'SIGCONT A: A dropped its lost zones and the share is 2+2 again')
print('A', zones(a), 'B', zones(b))
b[0].kill(); b[0].wait()
until(lambda: len(zones(a) or [])==4, 'SIGKILL B: A owns all 4')
b=node('b'); print('b restarted', wait_line(b[1],'ready'))
until(lambda: len(zones(a) or [])==2 and len(zones(b) or [])==2, 'B restarted: 2+2')
for n in (a,b):
    n[0].stdin.write('quit\n'); n[0].stdin.flush(); n[0].wait(timeout=30)
print('both quit cleanly')
