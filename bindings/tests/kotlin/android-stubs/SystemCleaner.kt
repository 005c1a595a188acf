// Compile-time stand-in for android.system.SystemCleaner (API 33); see Build.kt.
package android.system

object SystemCleaner {
    @JvmStatic fun cleaner(): java.lang.ref.Cleaner = throw UnsupportedOperationException("stub")
}
