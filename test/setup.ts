// Per test file: fast-check's default number of cases follows runs() (fewer inside
// an emulated test kernel).
import fc from 'fast-check';
import { runs } from './runs';

fc.configureGlobal({ numRuns: runs(100) });
