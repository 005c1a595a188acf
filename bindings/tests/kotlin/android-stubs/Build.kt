// Compile-time stand-ins for the few Android SDK classes the Android flavour
// of the generated bindings imports (no Android SDK can be fetched here), so
// that a change breaking the Android build fails in CI. Signatures follow
// the SDK (API 34); never run.
package android.os

object Build {
    object VERSION {
        @JvmField val SDK_INT: Int = 34
    }

    object VERSION_CODES {
        const val UPSIDE_DOWN_CAKE: Int = 34
    }
}
