// usePoll: runs a loader now and again every `interval` ms after each answer,
// paused while the tab is hidden (and run at once when it shows again).
// `interval` may be a function of the last data (a big session polls slower).
import { useEffect, useRef, useState, useCallback } from 'preact/hooks';

export const POLL_MS = 3000;

export function usePoll(load, deps = [], interval = POLL_MS) {
  const [state, setState] = useState({ data: null, error: null, loading: true });
  const gen = useRef(0);
  const timer = useRef(null);
  const run = useRef(null);

  useEffect(() => {
    const my = ++gen.current;
    let busy = false;
    let last = null;
    const schedule = () => {
      clearTimeout(timer.current);
      const ms = typeof interval === 'function' ? interval(last) : interval;
      if (!document.hidden && ms > 0) timer.current = setTimeout(tick, ms);
    };
    const tick = async () => {
      if (busy || my !== gen.current) return;
      busy = true;
      try {
        const data = await load();
        last = data;
        if (my === gen.current) setState({ data, error: null, loading: false });
      } catch (error) {
        if (my === gen.current) setState((s) => ({ data: s.data, error, loading: false }));
      } finally {
        busy = false;
        if (my === gen.current) schedule();
      }
    };
    run.current = tick;
    const onVisibility = () => {
      if (document.hidden) clearTimeout(timer.current);
      else tick();
    };
    document.addEventListener('visibilitychange', onVisibility);
    setState((s) => ({ ...s, loading: true }));
    tick();
    return () => {
      gen.current++;
      clearTimeout(timer.current);
      document.removeEventListener('visibilitychange', onVisibility);
    };
  }, deps);

  const refresh = useCallback(() => run.current && run.current(), []);
  return { ...state, refresh };
}
