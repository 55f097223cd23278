// A small event emitter: the same in browsers, Node and React Native.
// A listener that throws does not break the client: the exception is
// rethrown from a fresh task, where the platform reports it.

export class Emitter {
    #listeners = new Map();

    /** Adds a listener; returns a function that removes it. */
    on(type, fn) {
        let set = this.#listeners.get(type);
        if (!set) {
            set = new Set();
            this.#listeners.set(type, set);
        }
        set.add(fn);
        return () => this.off(type, fn);
    }

    off(type, fn) {
        this.#listeners.get(type)?.delete(fn);
    }

    emit(type, value) {
        const set = this.#listeners.get(type);
        if (!set) {
            return false;
        }
        for (const fn of [...set]) {
            try {
                fn(value);
            } catch (e) {
                setTimeout(() => { throw e; }, 0);
            }
        }
        return set.size > 0;
    }
}
