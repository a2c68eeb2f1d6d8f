# The sorting showcase's short run (ctest sorting_short_run): trains the infinity model for
# 400 steps on streams of 10 to 20 symbols, then evaluates it on 100 sequences of 15
# generated with another seed, on one thread and on three (which must print the same).
# Passes only if the held-out accuracy exceeds 0.25 and the training loss ends below 2.0.
# Neither is reachable without reading the stream: a model that only learns not to repeat
# the targets it has seen predicts position k uniformly among the 20 − k symbols left,
# which gives loss ln(20!)/20 = 2.117 and accuracy H_20/20 = 0.180.
#
#   cmake -DSORTING_TASK=<path to sorting_task> -DWORK=<scratch directory> -P sorting_short_run.cmake
cmake_minimum_required(VERSION 3.25)
file(MAKE_DIRECTORY "${WORK}")
execute_process(COMMAND "${SORTING_TASK}" generate --length 15 --count 100 --seed 99
                        --out "${WORK}/held_out.txt"
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
    message(FATAL_ERROR "sorting_task generate failed (${rc})")
endif()
execute_process(COMMAND "${SORTING_TASK}" train --model infinity --length 10:20 --seed 1
                        --steps 400 --batch 8 --d 32 --chunk 32 --basis 32 --lr 0.003
                        --out "${WORK}/model.safetensors"
                OUTPUT_VARIABLE train_out RESULT_VARIABLE rc)
message(STATUS "${train_out}")
if(NOT rc EQUAL 0)
    message(FATAL_ERROR "sorting_task train failed (${rc})")
endif()
if(NOT train_out MATCHES "final loss ([0-9.]+)")
    message(FATAL_ERROR "sorting_task train printed no final loss")
endif()
set(loss "${CMAKE_MATCH_1}")
execute_process(COMMAND "${SORTING_TASK}" eval --model "${WORK}/model.safetensors"
                        --data "${WORK}/held_out.txt"
                OUTPUT_VARIABLE eval_out RESULT_VARIABLE rc)
message(STATUS "${eval_out}")
if(NOT rc EQUAL 0 OR NOT eval_out MATCHES "accuracy=([0-9.]+) sequences=100")
    message(FATAL_ERROR "sorting_task eval failed (${rc}): ${eval_out}")
endif()
set(accuracy "${CMAKE_MATCH_1}")
if(loss GREATER_EQUAL 2.0 OR accuracy LESS_EQUAL 0.25)
    message(FATAL_ERROR "the short run did not learn: loss ${loss} (needs < 2.0), held-out "
                        "accuracy ${accuracy} (needs > 0.25)")
endif()
message(STATUS "learned: loss ${loss} < 2.0, held-out accuracy ${accuracy} > 0.25")
# eval --threads 3 must print exactly the line one thread printed.
execute_process(COMMAND "${SORTING_TASK}" eval --model "${WORK}/model.safetensors"
                        --data "${WORK}/held_out.txt" --threads 3
                OUTPUT_VARIABLE eval3_out RESULT_VARIABLE rc)
if(NOT rc EQUAL 0 OR NOT eval3_out STREQUAL eval_out)
    message(FATAL_ERROR "eval --threads 3 printed '${eval3_out}' (${rc}), one thread '${eval_out}'")
endif()
# train --threads: 30 steps on three threads follow the one-thread run (the gradients differ
# only by the order of their sum), so the final losses agree to 2e-4.
foreach(threads 1 3)
    execute_process(COMMAND "${SORTING_TASK}" train --model sticky --length 10:20 --seed 2
                            --steps 30 --batch 8 --d 32 --chunk 32 --basis 32 --lr 0.003
                            --threads ${threads} --out "${WORK}/model_${threads}.safetensors"
                    OUTPUT_VARIABLE out RESULT_VARIABLE rc)
    if(NOT rc EQUAL 0 OR NOT out MATCHES "final loss ([0-9]+)\\.([0-9][0-9][0-9][0-9])")
        message(FATAL_ERROR "train --threads ${threads} failed (${rc}): ${out}")
    endif()
    math(EXPR loss_${threads} "${CMAKE_MATCH_1} * 10000 + 1${CMAKE_MATCH_2} - 10000")
endforeach()
math(EXPR gap "${loss_1} - ${loss_3}")
if(gap GREATER 2 OR gap LESS -2)
    message(FATAL_ERROR "train --threads 3 ended at loss ${loss_3}e-4, one thread at ${loss_1}e-4")
endif()
message(STATUS "--threads 3 agrees: loss ${loss_3}e-4 and ${loss_1}e-4, the same accuracy")
